import json

import numpy as np
from PIL import Image

from gr_gdmcom.cli import main


def test_simulate_prints_rows_and_writes_images(tmp_path, small, capsys):
    img = tmp_path / "astro.png"
    Image.fromarray(small).save(img)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rc = main(["simulate", "--image", str(img), str(bad), "--snr", "5", "20", "--model", "tiny", "--device", "cpu",
               "--out", str(tmp_path / "out")])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 1  # one image failed, the other completed
    errors = [r for r in rows if "error" in r]
    good = [r for r in rows if "error" not in r]
    assert len(errors) == 1 and errors[0]["image"] == "bad" and "cannot read image" in errors[0]["error"]
    assert [r["snr_db"] for r in good] == [5.0, 20.0]
    need = {"image", "snr_db", "n_steps", "k", "m", "T", "rule", "symbols", "bcr", "psnr", "ms_ssim", "unet_calls",
            "seconds"}
    for r in good:
        assert need <= set(r)
        assert r["unet_calls"] == r["k"] + r["m"] + r["n_steps"]
        assert r["symbols"] == 128 and abs(r["bcr"] - 1 / 96) < 1e-12
        out = tmp_path / "out" / f"astro_snr{r['snr_db']:g}.png"
        assert np.asarray(Image.open(out)).shape == small.shape
    assert good[0]["n_steps"] > good[1]["n_steps"]


def test_simulate_rejects_bad_config(tmp_path, capsys):
    rc = main(["simulate", "--image", "x.png", "--snr", "5", "--k", "40", "--m", "20", "--model", "tiny",
               "--out", str(tmp_path)])
    assert rc == 2
    assert "k + m must not exceed T: k=40, m=20, T=50" in capsys.readouterr().err
