"""gr_gdmcom: training-free generative semantic communication over GNU Radio.

Layers (each importable alone):

* :mod:`gr_gdmcom.codec` -- the diffusion codec (torch; never imports gnuradio)
* :mod:`gr_gdmcom.phy`   -- burst physical layer (numpy)
* :mod:`gr_gdmcom.blocks` -- GNU Radio blocks (thin wrappers)
* :mod:`gr_gdmcom.bridge` -- ZMQ inference server and client
* :mod:`gr_gdmcom.eval`  -- metrics, baselines and sweeps
"""

__version__ = "0.1.0"
