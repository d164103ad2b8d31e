"""phy/snr.py against the SNR definition written out (Es/N0 = mean|s|^2 / mean|e|^2, sigma^2 = 10^(-SNR/10)):
known values, scalar and array forms with their types, exact errors."""

import numpy as np
import pytest

from gr_gdmcom.phy.snr import measure_snr_db, noise_var_to_snr_db, noise_voltage, snr_db_to_noise_var


def test_conversions_known_values_types_and_arrays():
    assert snr_db_to_noise_var(10.0) == pytest.approx(0.1) and type(snr_db_to_noise_var(10.0)) is float
    assert noise_var_to_snr_db(0.01) == pytest.approx(20.0) and type(noise_var_to_snr_db(0.01)) is float
    np.testing.assert_allclose(snr_db_to_noise_var(np.array([0.0, 3.0, 20.0])), [1.0, 10 ** -0.3, 0.01])
    np.testing.assert_allclose(noise_var_to_snr_db(np.array([1.0, 0.1, 0.0])), [0.0, 10.0, 100.0])  # floored
    assert noise_var_to_snr_db(np.array([0.5])).shape == (1,)


def test_noise_voltage_is_the_noise_std_whatever_sps():
    for sps in (1, 2, 8):
        assert noise_voltage(6.0, sps) == pytest.approx(10 ** (-6 / 20))
    assert noise_voltage(6.0) == noise_voltage(6.0, 4)
    with pytest.raises(ValueError, match=r"^sps must be >= 1, got 0$"):
        noise_voltage(6.0, 0)


def test_measure_snr_uses_the_signal_power(rng):
    s = 2.0 * np.exp(1j * rng.uniform(0, 2 * np.pi, 4000))  # power 4, not 1
    e = 0.1 * (rng.standard_normal(4000) + 1j * rng.standard_normal(4000))
    want = 10 * np.log10(np.mean(np.abs(s) ** 2) / np.mean(np.abs(e) ** 2))
    assert measure_snr_db(s, s + e) == pytest.approx(want, abs=1e-9)
    assert measure_snr_db(s, s) == pytest.approx(10 * np.log10(4 / 1e-10))  # noiseless: floored
