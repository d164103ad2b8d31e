"""codec/schedule.py against formulas written out here: abar at continuous timesteps and its
inverse, every step rule's N from its definition, the exact rule's path, the scheduler settings."""

import math

import numpy as np
import pytest

from gr_gdmcom.codec.schedule import SD_SCHEDULER, get_grid, make_scheduler, sampling_path, select_steps, steps_table

BETAS = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
ABAR = np.cumprod(1 - BETAS)
TAUS = np.arange(50) * 20 + 1  # leading spacing, offset 1
A = np.concatenate([[ABAR[0]], ABAR[TAUS]])  # clean end a_0 = abar_0: SD 1.5's set_alpha_to_one = False


def abar_formula(t):
    """log abar linear between integer timesteps; 1 for the clean latent (t < 0); held at t = 999."""
    if t < 0:
        return 1.0
    t = min(t, 999.0)
    lo = int(math.floor(t))
    hi = min(lo + 1, 999)
    w = t - lo
    return math.exp((1 - w) * math.log(ABAR[lo]) + w * math.log(ABAR[hi]))


@pytest.mark.parametrize("t", [-5.0, -1.0, 0.0, 0.25, 1.0, 17.5, 500.0, 998.9, 999.0, 1200.0])
def test_abar_at_interpolates_log_abar(t):
    assert get_grid(50).abar_at(t) == pytest.approx(abar_formula(t), rel=1e-5)


@pytest.mark.parametrize("t", [-0.5, -0.01, 0.0, 0.3, 1.0, 20.7, 481.0, 640.25, 998.5])
def test_t_for_abar_inverts_abar(t):
    g = get_grid(50)
    # between the clean latent (t = -1, log abar = 0) and t = 0 log abar is linear too
    a = abar_formula(t) if t >= 0 else math.exp((1 + t) * math.log(ABAR[0]))
    assert g.t_for_abar(a) == pytest.approx(t, abs=1e-3)  # diffusers keeps abar in float32


def test_t_for_abar_edges():
    g = get_grid(50)
    assert g.t_for_abar(1.0) == -1.0 and g.t_for_abar(1.5) == -1.0
    assert g.t_for_abar(ABAR[-1] / 10) == pytest.approx(999.0)  # below the schedule: its end
    assert g.t_for_abar(ABAR[0]) == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 3.0, 7.5, 12.0, 20.0, 35.0])
@pytest.mark.parametrize("k,m", [(5, 5), (0, 10), (10, 0), (2, 3)])
def test_every_rule_from_its_definition(snr_db, k, m):
    power = 1.7
    a_km = A[k + m]
    s2 = (1 - a_km) + a_km / A[k] * power * 10 ** (-snr_db / 10)
    cand = np.arange(k + m, 51)
    var = select_steps(snr_db, k=k, m=m, rule="variance", power=power)
    assert var.n_steps == cand[np.argmin(np.abs((1 - A[cand]) - s2))] and var.rule == "variance"
    assert var.scale == pytest.approx(math.sqrt(A[var.n_steps] / a_km), rel=1e-5)
    assert var.start_t == TAUS[var.n_steps - 1] and var.start_abar == pytest.approx(A[var.n_steps], rel=1e-5)
    assert select_steps(snr_db, k=k, m=m, rule="variance", power=power, rescale=False).scale == 1.0
    ex = select_steps(snr_db, k=k, m=m, rule="exact", power=power)
    abar_star = a_km / (a_km + s2)
    assert ex.start_abar == pytest.approx(abar_star, rel=1e-5) and ex.rule == "exact"
    assert ex.scale == pytest.approx(1 / math.sqrt(a_km + s2), rel=1e-5)
    assert ex.s_tot2 == pytest.approx(s2, rel=1e-5)
    assert ex.n_steps == int(np.sum(TAUS < ex.start_t)) + 1
    path = sampling_path(ex, get_grid(50))
    below = TAUS[TAUS < ex.start_t][::-1]
    assert [p[0] for p in path] == pytest.approx([ex.start_t] + list(below.astype(float)))
    assert [p[2] for p in path] == pytest.approx(list(ABAR[below]) + [A[0]], rel=1e-5)
    assert path[0][1] == pytest.approx(abar_star, rel=1e-5)


def test_grid_sampling_path_and_fixed_steps():
    ch = select_steps(5.0, steps=12)
    assert (ch.n_steps, ch.rule) == (12, "fixed")
    path = sampling_path(ch, get_grid(50))
    assert [p[0] for p in path] == list(TAUS[11::-1].astype(float))
    assert [p[1] for p in path] == pytest.approx(list(A[12:0:-1]), rel=1e-5)
    assert [p[2] for p in path] == pytest.approx(list(A[11::-1]), rel=1e-5)
    for bad in (9, 51):
        with pytest.raises(ValueError, match=rf"^steps N must satisfy k \+ m <= N <= T, got N={bad}, k=5, m=5, T=50$"):
            select_steps(5.0, steps=bad)
    with pytest.raises(ValueError, match=r"^k \+ m must not exceed T: k=30, m=30, T=50$"):
        select_steps(5.0, k=30, m=30)
    with pytest.raises(ValueError, match=r"^SNR must be finite, got nan$"):
        select_steps(float("nan"))
    with pytest.raises(ValueError, match=r"^unknown step rule 'median'$"):
        select_steps(5.0, rule="median")


def test_step_choice_dict_and_steps_table():
    ch = select_steps(5.0)
    assert ch.to_dict() == dict(n_steps=ch.n_steps, rule="snr", start_t=ch.start_t, start_abar=ch.start_abar,
                                scale=ch.scale, s_tot2=ch.s_tot2)
    assert steps_table([0, 5.0, 20], rule="variance") == {0.0: 50, 5.0: 18, 20.0: 10}


def test_scheduler_settings_and_overrides():
    s = make_scheduler()
    for k, v in SD_SCHEDULER.items():
        assert s.config[k] == v
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), ABAR, rtol=1e-5)
    s = make_scheduler({"timestep_spacing": "trailing", "beta_end": 0.02, "unknown_key": 3})
    assert s.config.timestep_spacing == "leading" and s.config.beta_end == 0.02
    g = get_grid(10, {"beta_end": 0.02, "unknown_key": 3})
    assert list(g.timesteps) == [-1] + list(np.arange(10) * 100 + 1) and g.T == 10
    assert g.alphas[-1] < get_grid(10).alphas[-1]


def test_boundaries_of_k_m_and_fixed_steps():
    from gr_gdmcom.codec.schedule import channel_noise_var

    assert channel_noise_var(10.0) == pytest.approx(0.1)  # P = 1 by default
    assert get_grid().T == 50 and get_grid() is get_grid(50)  # T = 50 by default, cached
    assert select_steps(5.0, k=25, m=25).n_steps == 50  # k + m = T: the only candidate
    assert select_steps(5.0, steps=10).n_steps == 10 and select_steps(5.0, steps=50).n_steps == 50
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # k + m = 0: log-SNR of a_0 = 1 is +inf, silently
        assert select_steps(30.0, k=0, m=0).n_steps >= 1


def test_exact_path_starting_on_a_grid_point_has_no_empty_step():
    from gr_gdmcom.codec.schedule import StepChoice

    g = get_grid(50)
    ch = StepChoice(n_steps=25, rule="exact", start_t=481.0, start_abar=float(ABAR[481]), scale=1.0, s_tot2=0.5)
    path = sampling_path(ch, g)
    assert len(path) == int(np.sum(TAUS < 481)) + 1 == 25
    assert all(a_to > a_from for _, a_from, a_to in path)  # each step goes to a cleaner point
