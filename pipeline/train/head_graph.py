"""A fitted head as an ONNX graph beside its skops file, so that predicting needs neither scikit-learn nor skops.

Why: loading a head with skops imports all of scikit-learn (its allowlist walks every estimator) and torch through
it, 2-3 s of a `predict --text` start-up; onnxruntime starts in 0.2 s and runs the same arithmetic. skl2onnx does
the conversion (logreg, linear-svm, mlp and rbf-svm convert). The graph is kept only when onnxruntime gives the
fitted head's probabilities on training rows, to float32 rounding and with the same argmax; otherwise (knn's
distance ties, an estimator without a converter) the run has no graph and predict loads the skops file. Like skops,
an ONNX file is data: loading one runs no code.
"""

import warnings

import numpy as np

TOLERANCE = 1e-5  # float32 arithmetic against scikit-learn's float64: measured differences are about 1e-7
CHECK_ROWS = 4096  # training rows the graph is checked on
OPSET = {"": 18, "ai.onnx.ml": 3}


def head_graph(model, X_train: np.ndarray) -> bytes | None:
    """The fitted head `model` as ONNX bytes (see convert), or None where it does not convert or does not give the
    head's probabilities on (up to CHECK_ROWS of) `X_train`."""
    X = np.ascontiguousarray(X_train[:CHECK_ROWS], dtype=np.float32)
    payload = convert(model, X.shape[1])
    if payload is None:
        return None
    try:
        got = GraphHead(payload, model.classes_).predict_proba(X)
    except Exception:  # a graph onnxruntime refuses: the skops file serves
        return None
    want = model.predict_proba(X)
    same = got.shape == want.shape and np.abs(got - want).max() <= TOLERANCE
    return payload if same and (got.argmax(axis=1) == want.argmax(axis=1)).all() else None


def convert(model, dim: int) -> bytes | None:
    """skl2onnx's graph of a fitted head on `dim`-wide vectors (input: float32 vectors; output 'probabilities',
    columns in model.classes_ order), or None where it has no converter for the head."""
    try:
        from skl2onnx import to_onnx
    except ImportError:
        return None
    estimator = getattr(model, "best_estimator_", model)  # a search's refitted winner is what predicts
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = to_onnx(estimator, np.zeros((1, dim), dtype=np.float32), options={"zipmap": False},
                            target_opset=OPSET)
    except Exception:  # skl2onnx raises several types for estimators and options it does not support
        return None
    return graph.SerializeToString()


class GraphHead:
    """A head graph on onnxruntime, with the estimator API predict needs: classes_ and predict_proba."""

    def __init__(self, payload: bytes, classes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are not the user's business
        # One thread: a head is a few small matmuls (microseconds a row), while a pool's workers spin after each call
        # and take CPU from the encoder running beside them (the server scores a batch while the next one encodes)
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.classes_ = np.asarray(classes)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        feed = {self.input: np.ascontiguousarray(X, dtype=np.float32)}
        return self.session.run(["probabilities"], feed)[0].astype(np.float64)


def full_proba(model, X: np.ndarray, n_labels: int) -> np.ndarray:
    """predict_proba with one column per label, also for labels the head never saw in train."""
    proba = np.zeros((len(X), n_labels))
    proba[:, model.classes_] = model.predict_proba(X)
    return proba
