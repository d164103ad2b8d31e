#!/usr/bin/env bash
# Run every fenced command of README.md as a user of a fresh clone would, offline:
# the ```bash lines one by one in one shell (so `. .venv/bin/activate` holds), then the
# ```python blocks, in a copy of this checkout's tracked files, with HF_HUB_OFFLINE=1.
# Lines marked [GPU], [network] or [not run by scripts/readme-check.sh] are listed, not run.
# Prints one line per command (status, seconds) and exits 1 when any failed.
#   bash scripts/readme-check.sh            # after scripts/setup.sh (it reuses .venv)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
(cd "$ROOT" && git ls-files -z | xargs -0 cp --parents -t "$WORK")
ln -s "$ROOT/.venv" "$WORK/.venv"
export HF_HUB_OFFLINE=1 GDMCOM_NO_GRC_CONFIG=1 PYTHONPATH="$WORK" GRC_BLOCKS_PATH="$WORK/grc"
"$ROOT/.venv/bin/python" - "$ROOT/README.md" "$WORK/run.sh" <<'PYEOF'
import re, shlex, sys
text = open(sys.argv[1]).read()
skip = re.compile(r"\[(GPU|network)[^\]]*\]|\[not run by scripts/readme-check\.sh\]")
out = ["cd \"$(dirname \"$0\")\"", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT", "failed=0",
       'run() { local t=$SECONDS; if eval "$1" >"log.$2" 2>&1; then echo "ok   $((SECONDS-t)) s  $1";'
       ' else echo "FAIL $((SECONDS-t)) s  $1"; tail -n 20 "log.$2" | sed "s/^/     /"; failed=1; fi; }']
n = 0
for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
    for line in block.replace("\\\n", " ").splitlines():
        if not line.strip():
            continue
        n += 1
        if skip.search(line):
            out.append(f"echo {shlex.quote('skip        ' + line.strip())}")
        elif line.strip().startswith(". "):
            out.append(line.strip())
        else:
            out.append(f"run {shlex.quote(line.strip())} {n}")
for i, block in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.S)):
    open(sys.argv[2] + f".py{i}", "w").write(block)
    n += 1
    out.append(f"run {shlex.quote(f'.venv/bin/python run.sh.py{i}')} {n}")
out.append("exit $failed")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
PYEOF
bash "$WORK/run.sh"
