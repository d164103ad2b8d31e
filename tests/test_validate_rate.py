"""``gdmcom validate --rate``: latent rate-distortion on the analytic prior and each
reduction's oracle floor (eval/validate_rate.py; docs/rate.md)."""

import numpy as np
import pytest

from gr_gdmcom.cli import main
from gr_gdmcom.codec.analytic import build_analytic
from gr_gdmcom.codec.rate import Reduction
from gr_gdmcom.config import CodecConfig
from gr_gdmcom.eval import validate_rate


def test_oracle_floor_of_a_subset_is_the_gaussian_conditional_variance_of_the_unsent_values():
    am = build_analytic("analytic")
    red = Reduction.make("subset", 4, (4, 8, 8))
    sent = red._subset()
    unsent = np.setdiff1d(np.arange(256), sent)
    w = np.exp(am.log_weights(CodecConfig.prompt).double().numpy())
    w /= w.sum()
    expect = 0.0
    for k in range(am.gmm.K):  # Schur complement: S_uu - S_us S_ss^-1 S_su, summed over the unsent values
        s = am.gmm.covariance(k).double().numpy()
        suu, sus, sss = s[np.ix_(unsent, unsent)], s[np.ix_(unsent, sent)], s[np.ix_(sent, sent)]
        expect += w[k] * np.trace(suu - sus @ np.linalg.solve(sss, sus.T)) / 256
    assert validate_rate.oracle_floor(am, red, CodecConfig.prompt) == pytest.approx(expect, rel=1e-9)
    # the whole latent measured exactly leaves nothing to estimate
    assert validate_rate.oracle_floor(am, Reduction.make("full", 1, (4, 8, 8)), CodecConfig.prompt) == \
        pytest.approx(0.0, abs=1e-9)


def test_cli_rate_rewrites_only_its_section(tmp_path, capsys):
    out = tmp_path / "validation.md"
    out.write_text("# Validation\n\nkept text\n")
    argv = ["validate", "--rate", "--rate-samples", "2", "--snr", "7", "10", "--bcr", "1/96", "1/192",
            "--out", str(out), "-q"]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "target not met" in said or "target met" in said
    assert main(argv) == 0  # again: replaced in place, not appended
    text = out.read_text()
    assert text.startswith("# Validation\n\nkept text\n") and text.count(validate_rate.BEGIN) == 1
    assert "## 7. Beyond the paper: latent rate–distortion below BCR 1/96" in text
    rows = [line for line in text.splitlines() if line.startswith("| 1/")]
    assert [r.split(" | ")[1] for r in rows] == ["full", "subset", "pool", "dct"]
    assert (tmp_path / validate_rate.FIGURE).stat().st_size > 0
    # the verdict compares 1/192 at 10 dB with the whole latent at 7 dB, from the table's own numbers
    full7 = float(rows[0].split(" | ")[2])
    best10 = min(float(r.split(" | ")[3]) for r in rows[1:])
    verdict = "met" if best10 < full7 else "not met"
    assert f"**Target (BCR 1/192 at 10 dB against the whole latent at 7 dB, half the energy per image): {verdict}.**" \
        in text
