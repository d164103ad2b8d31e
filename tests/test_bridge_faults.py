"""Faults around the inference server, as an operator meets them: a server in the endpoint
list that accepts connections but never answers (hung, SIGSTOPped, a model call that never
returns), and malformed ``server`` strings.  Loopback only; every wait has a timeout."""

import threading

import pytest
import zmq

from gr_gdmcom.bridge import InferenceServer, RemoteBackend, make_backend
from gr_gdmcom.codec import GenerativeCodec
from gr_gdmcom.config import CodecConfig

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cfg():
    return CodecConfig(model="tiny", device="cpu", k=1, m=1, steps=2)


@pytest.fixture(scope="module")
def bcodec(components, cfg):
    return GenerativeCodec(cfg, components=components)


class BlackHole:
    """A ROUTER that completes every connection and reads every request, and never answers."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            if self.sock.poll(50):
                self.sock.recv_multipart()
                self.received += 1

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def black_hole():
    bh = BlackHole()
    yield bh
    bh.close()


@pytest.mark.parametrize("hung_first", [True, False])
def test_a_retry_after_a_timeout_goes_to_the_other_server(bcodec, cfg, black_hole, hung_first):
    """Two servers listed, one hung: every request is answered within three attempts (the first
    goes where the socket's round robin sends it; each retry's new socket sends to the endpoint
    after the previous one's, so the second and third differ).  A new socket used to connect
    the endpoints in list order and send its first request to whichever connection completed
    first -- the first listed, or the hung server ahead of a busy one -- so retries went back
    to it: with the hung server listed first, 5 of 20 requests failed after 4 attempts each."""
    srv = InferenceServer(bcodec, "tcp://127.0.0.1:0").start()
    eps = [black_hole.endpoint, srv.last_endpoint]
    if not hung_first:
        eps.reverse()
    c = RemoteBackend(",".join(eps), cfg, timeout_ms=1000, retries=2)
    try:
        for _ in range(8):
            assert c.status()["served"] == 0
        assert c.stats["timeouts"] <= 2 * 8, c.stats
        assert black_hole.received >= 1  # the hung one was tried (round robin), and did not cost a request
    finally:
        c.close()
        srv.stop(timeout=10)


def test_several_endpoints_one_down_costs_no_timeout(bcodec, cfg):
    """A listed server that is down (nothing listens) is skipped: no timeouts, whatever the order."""
    srv = InferenceServer(bcodec, "tcp://127.0.0.1:0").start()
    with zmq.Context() as ctx:  # a free port nobody listens on
        s = ctx.socket(zmq.ROUTER)
        port = s.bind_to_random_port("tcp://127.0.0.1")
        s.close(linger=0)
    try:
        for eps in ([f"tcp://127.0.0.1:{port}", srv.last_endpoint], [srv.last_endpoint, f"tcp://127.0.0.1:{port}"]):
            c = RemoteBackend(",".join(eps), cfg, timeout_ms=3000, retries=0)
            try:
                for _ in range(4):
                    c.status()
                assert c.stats["timeouts"] == 0, c.stats
            finally:
                c.close()
    finally:
        srv.stop(timeout=10)


@pytest.mark.parametrize("option", ["timeout_ms=abc", "retries=2.5"])
def test_a_server_option_that_is_not_a_number_is_named(cfg, option):
    with pytest.raises(ValueError, match=option.split("=")[0] + ".*must be an integer"):
        make_backend(f"tcp://127.0.0.1:5555?{option}", cfg)
