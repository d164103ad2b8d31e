#!/usr/bin/env bash
# Idempotent set-up for gr_gdmcom on Debian/Ubuntu:
#   1. system packages (GNU Radio 3.10 from Debian, pyzmq, venv) when missing;
#   2. a virtual environment in .venv made from /usr/bin/python3 with
#      --system-site-packages, so it sees Debian's `gnuradio` and `pmt`;
#   3. pip install of torch (CPU wheel, pinned) and this package with numpy<2.
# Re-running it does nothing that is already done.  Variables:
#   GDMCOM_VENV   venv folder            [default: .venv]
#   GDMCOM_EXTRAS pip extras to install  [default: test,ray]
#   GDMCOM_TORCH  torch requirement      [default: torch==2.13.0]
#   GDMCOM_NO_GRC_CONFIG=1  leave ~/.gnuradio/config.conf alone
#   GDMCOM_NO_GUI_TOOLS=1   skip xvfb/xauth/gir1.2-gtk-3.0/imagemagick/python3-pyqt5.qtsvg
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GDMCOM_VENV:-.venv}
EXTRAS=${GDMCOM_EXTRAS:-test,ray}  # ray: Ray Serve engine (docs/server.md)
TORCH=${GDMCOM_TORCH:-torch==2.13.0}

need_apt=()
/usr/bin/python3 -c "import gnuradio.gr, pmt" 2>/dev/null || need_apt+=(gnuradio)
/usr/bin/python3 -c "import zmq" 2>/dev/null || need_apt+=(python3-zmq)
/usr/bin/python3 -c "import ensurepip, venv" 2>/dev/null || need_apt+=(python3-venv)
command -v grcc >/dev/null 2>&1 || need_apt+=(gnuradio)
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "[setup] installing system packages: ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV (system site packages, for gnuradio/pmt)"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.gdmcom-installed"
want="$(cat pyproject.toml | sha1sum | cut -c1-12) $EXTRAS $TORCH"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] pip install ($TORCH, numpy<2, extras: $EXTRAS); log: $VENV/pip.log"
    pip_log="$VENV/pip.log"
    { "$PY" -m pip install -q "$TORCH" "numpy<2" &&
      "$PY" -m pip install -q -e ".[$EXTRAS]" "$TORCH" "numpy<2"; } >"$pip_log" 2>&1 || {
        tail -n 40 "$pip_log" >&2; echo "[setup] pip install failed (full log: $pip_log)" >&2; exit 1; }
    echo "$want" > "$stamp"
fi
"$PY" -c "import gnuradio.gr, torch, diffusers, gr_gdmcom" || {
    echo "[setup] the environment in $VENV does not import; remove it and re-run" >&2; exit 1; }

# GNU Radio Companion finds the block YAML through [grc] local_blocks_path in
# ~/.gnuradio/config.conf (or GRC_BLOCKS_PATH); this checkout's grc/ replaces an earlier
# checkout's entry there (GRC lets a later folder override a block), and says what changed.
[ "${GDMCOM_NO_GRC_CONFIG:-}" = 1 ] || "$PY" -m gr_gdmcom.grc_config "$PWD/grc"

# --- GRC GUI: a virtual X display, GTK 3 introspection (GRC's GUI and its layout test),
# ImageMagick (screenshots) and PyQt5's QtSvg; installed only when missing.
need_gui=()
command -v Xvfb >/dev/null 2>&1 || need_gui+=(xvfb)
command -v xauth >/dev/null 2>&1 || need_gui+=(xauth)
/usr/bin/python3 -c "import gi; gi.require_version('Gtk', '3.0')" 2>/dev/null || need_gui+=(gir1.2-gtk-3.0)
# `import` (the screenshot tool) rather than `convert`, which other software also installs
command -v import >/dev/null 2>&1 || need_gui+=(imagemagick)
# matplotlib's Qt backend needs QtSvg; without it gnuradio.qtgui warns "Matplotlib is a required dependency"
/usr/bin/python3 -c "from PyQt5 import QtSvg" 2>/dev/null || need_gui+=(python3-pyqt5.qtsvg)
if [ ${#need_gui[@]} -gt 0 ] && [ "${GDMCOM_NO_GUI_TOOLS:-}" != 1 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "[setup] installing GRC GUI test tools: ${need_gui[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${need_gui[@]}" >/dev/null
fi
