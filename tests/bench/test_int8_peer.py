"""bench speed's int8 side: ours_int8 calibrated before timing (never refused: the bench reports the cosines), its
speed.json fields, and the int8 matmul peak measured by OpenVINO."""

import numpy as np
import pytest

pytest.importorskip("nncf")
pytest.importorskip("openvino")

from pipeline.bench.int8_peer import int8_encoder, int8_fields, int8_matmul_peak  # noqa: E402
from pipeline.data import unlabelled  # noqa: E402
from pipeline.embed.settings import EncoderOptions  # noqa: E402


def test_ours_int8_is_calibrated_on_the_timed_texts(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ds = unlabelled("timed", [f"a good fun movie number {i}" for i in range(40)])
    int8 = int8_encoder(EncoderOptions(device="cpu", dtype="fp32").resolve(str(tiny_bert)), ds)
    assert int8 is not None and int8.config.runtime == "openvino-int8" and int8.config.calibration.graph
    assert int8.settings().int8_graph == int8.config.calibration.graph


def test_int8_fields_and_peak():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    fields = int8_fields(a, np.array([[1.0, 0.0], [1.0, 0.0]]), seconds=1.0, ours_all=1.5)
    assert fields["int8_speedup_vs_ours"] == 1.5 and fields["int8_min_cosine"] == pytest.approx(2 ** -0.5)
    assert int8_matmul_peak(seconds=0.2) > 0
