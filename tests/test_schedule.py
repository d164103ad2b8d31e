import json
import math

import numpy as np
import pytest

from gr_gdmcom.cli import main
from gr_gdmcom.codec.schedule import get_grid, sampling_path, select_steps, steps_table, total_noise_var


def test_grid_is_sd_leading_spacing():
    g = get_grid(50)
    # SD 1.5's scheduler config says set_alpha_to_one=False: the clean end is abar_0 = 1 - beta_0
    assert g.timesteps[0] == -1 and g.alphas[0] == pytest.approx(1 - 0.00085, rel=1e-7)
    assert get_grid(50, dict(set_alpha_to_one=True)).alphas[0] == 1.0
    assert list(g.timesteps[1:4]) == [1, 21, 41] and g.timesteps[-1] == 981
    assert g.alphas[1] == pytest.approx(0.99829602, rel=1e-6)
    assert np.all(np.diff(g.alphas) < 0)


def test_snr_rule_gives_design_table():
    assert steps_table([0, 5, 10, 15, 20]) == {0.0: 21, 5.0: 15, 10.0: 12, 15.0: 11, 20.0: 10}


def test_rules_differ_and_respect_lower_bound():
    var = steps_table([0, 5, 10, 20], rule="variance")
    assert var == {0.0: 50, 5.0: 18, 10.0: 13, 20.0: 10}
    for s in (0, 5, 10, 20, 40):
        for rule in ("snr", "variance"):
            assert select_steps(s, rule=rule).n_steps >= 10


def test_exact_rule_matches_total_variance():
    g = get_grid(50)
    ch = select_steps(5.0, rule="exact")
    a_km = g.alphas[10]
    s2 = total_noise_var(g, 5, 5, 5.0)
    # After scaling, signal and noise coefficients match the forward process at t*.
    assert ch.start_abar == pytest.approx(a_km / (a_km + s2))
    assert (ch.scale ** 2) * a_km == pytest.approx(ch.start_abar)
    assert (ch.scale ** 2) * s2 == pytest.approx(1 - ch.start_abar)
    path = sampling_path(ch, g)
    assert len(path) == ch.n_steps and path[-1][2] == g.alphas[0] and path[0][0] == pytest.approx(ch.start_t)


def test_exact_rule_counts_the_step_onto_the_grid():
    """``exact``'s N counts UNet calls: t* above the grid's top timestep (981 for T = 50) at very
    low SNR gives T + 1 (t* -> 981 -> ... -> clean), as codec.md says; never more."""
    g = get_grid(50)
    for snr in (-100.0, -30.0):
        ch = select_steps(snr, rule="exact")
        assert ch.start_t > g.timesteps[-1] and ch.n_steps == 51
        assert len(sampling_path(ch, g)) == 51
    assert select_steps(-10.0, rule="exact").n_steps == 36


def test_snr_rule_rescale_matches_forward_process():
    ch = select_steps(10.0)
    g = get_grid(50)
    assert ch.scale == pytest.approx(math.sqrt(g.alphas[ch.n_steps] / g.alphas[10]))
    assert select_steps(10.0, rescale=False).scale == 1.0


def test_fixed_steps_and_bad_values():
    assert select_steps(5.0, steps=15).n_steps == 15 and select_steps(5.0, steps=15).rule == "fixed"
    with pytest.raises(ValueError, match="k \\+ m must not exceed T"):
        select_steps(5.0, k=30, m=30)
    with pytest.raises(ValueError, match="steps N must satisfy"):
        select_steps(5.0, steps=3)
    with pytest.raises(ValueError, match="SNR must be finite"):
        select_steps(float("nan"))


def test_more_noise_means_more_steps():
    for rule in ("snr", "variance", "exact"):
        n = [select_steps(s, rule=rule).n_steps for s in range(-5, 31, 5)]
        assert n == sorted(n, reverse=True), rule


def test_cli_steps(capsys):
    assert main(["steps", "--snr", "0", "5", "10", "15", "20"]) == 0
    assert json.loads(capsys.readouterr().out) == {"0": 21, "5": 15, "10": 12, "15": 11, "20": 10}
    # negative numbers in any form Python reads (argparse's own pattern has no exponent: -1e1 was an option)
    assert main(["steps", "--snr", "-1e1", "-.5", "-2.5E-1", "-10"]) == 0
    assert json.loads(capsys.readouterr().out) == {"-10": 36, "-0.5": 22, "-0.25": 21}
    assert main(["steps", "--snr", "5", "--k", "40", "--m", "20"]) == 2
    assert "k + m must not exceed T: k=40, m=20, T=50" in capsys.readouterr().err


def test_a_grid_past_the_schedule_is_a_clear_error():
    """T = 1000 passes CodecConfig (1..1000) but SD's steps_offset 1 puts its top step at timestep 1000,
    past the 1000-step schedule: an IndexError traceback before; a ValueError naming the largest T now."""
    from gr_gdmcom.codec.schedule import SD_SCHEDULER, get_grid

    assert get_grid(999, SD_SCHEDULER).timesteps[-1] == 999
    with pytest.raises(ValueError, match=r"^T=1000 steps reach timestep 1000, beyond the model's 1000 training steps "
                                         r"\(its scheduler's steps_offset is 1\): T must be at most 999$"):
        get_grid(1000, SD_SCHEDULER)
