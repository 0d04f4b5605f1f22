"""The exportable scikit-learn heads rebuilt as torch modules, from the fitted objects' own numbers: standardisation,
then a linear model (logreg), calibrated linear SVMs (linear-svm) or the MLP's layers (mlp). ONNX export traces them
together with the encoder and the pooling.
"""

import numpy as np
import torch
from torch import nn

from pipeline.errors import PipelineError

EXPORTABLE = ("logreg", "linear-svm", "mlp")  # the heads that have a module here


def head_module(model, n_labels: int) -> nn.Module:
    """A fitted head (GridSearchCV or Pipeline of a scaler and a classifier) as torch ops, ending in one probability
    column per label like `full_proba` (labels the head never saw get 0)."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    if isinstance(model, GridSearchCV):
        model = model.best_estimator_
    steps = [step for _, step in model.steps] if isinstance(model, Pipeline) else [model]
    layers = [_scaler(step) for step in steps[:-1]]
    final = steps[-1]
    layers.append(_classifier(final))
    spread = np.zeros((len(final.classes_), n_labels), dtype=np.float32)
    spread[np.arange(len(final.classes_)), np.asarray(final.classes_, dtype=int)] = 1
    layers.append(_MatMul(spread))
    return nn.Sequential(*layers)


def _f32(array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float32))


class _Scale(nn.Module):
    def __init__(self, mean, scale) -> None:
        super().__init__()
        self.register_buffer("mean", _f32(mean))
        self.register_buffer("scale", _f32(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


class _MatMul(nn.Module):
    def __init__(self, matrix) -> None:
        super().__init__()
        self.register_buffer("matrix", _f32(matrix))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix


def _two_columns(p1: torch.Tensor) -> torch.Tensor:
    """Binary heads give P(second class); the table wants both columns."""
    return torch.cat([1 - p1, p1], dim=1)


class _Logistic(nn.Module):
    """LogisticRegression: sigmoid of the decision for two classes, softmax for more (as predict_proba does)."""

    def __init__(self, coef, intercept) -> None:
        super().__init__()
        self.register_buffer("weight", _f32(coef).T.contiguous())
        self.register_buffer("bias", _f32(intercept))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.weight + self.bias
        return _two_columns(torch.sigmoid(z)) if z.shape[1] == 1 else torch.softmax(z, dim=1)


class _SigmoidCalibrated(nn.Module):
    """CalibratedClassifierCV(method='sigmoid') over linear models: per fold, each class's decision goes through
    its Platt sigmoid 1 / (1 + exp(a*f + b)); two classes take 1 - p for the first, more are normalised to sum to
    one; the folds' probabilities are averaged."""

    def __init__(self, calibrated) -> None:
        super().__init__()
        n_classes = len(calibrated.classes_)
        weights, biases, a, b, spreads = [], [], [], [], []
        for fold in calibrated.calibrated_classifiers_:
            if fold.method != "sigmoid" or not hasattr(fold.estimator, "coef_"):
                raise PipelineError(f"cannot export a {fold.method} calibration of {type(fold.estimator).__name__}:"
                                    f" only sigmoid-calibrated linear models export")
            positions = np.searchsorted(fold.classes, fold.estimator.classes_)
            if n_classes == 2:
                positions = np.array([1])
            spread = np.zeros((len(fold.calibrators), n_classes), dtype=np.float32)
            spread[np.arange(len(fold.calibrators)), positions[:len(fold.calibrators)]] = 1
            weights.append(np.atleast_2d(fold.estimator.coef_).T)
            biases.append(np.atleast_1d(fold.estimator.intercept_))
            a.append([c.a_ for c in fold.calibrators])
            b.append([c.b_ for c in fold.calibrators])
            spreads.append(spread)
        if len({w.shape for w in weights}) > 1:
            raise PipelineError("cannot export this linear-svm: its calibration folds saw different classes")
        self.binary = n_classes == 2
        for name, values in (("weight", weights), ("bias", biases), ("a", a), ("b", b), ("spread", spreads)):
            self.register_buffer(name, _f32(np.stack(values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        folds = []
        for k in range(self.weight.shape[0]):
            p = torch.sigmoid(-((x @ self.weight[k] + self.bias[k]) * self.a[k] + self.b[k])) @ self.spread[k]
            if self.binary:
                p = _two_columns(p[:, 1:2])
            else:
                total = p.sum(dim=1, keepdim=True)
                p = torch.where(total > 0, p / torch.where(total > 0, total, 1), 1.0 / p.shape[1])
            folds.append(p)
        return torch.stack(folds).mean(dim=0)


class _MLP(nn.Module):
    """MLPClassifier's forward pass: its hidden activation between layers, logistic or softmax at the end."""

    ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "logistic": torch.sigmoid, "identity": lambda x: x}

    def __init__(self, mlp) -> None:
        super().__init__()
        if mlp.activation not in self.ACTIVATIONS or mlp.out_activation_ not in ("logistic", "softmax"):
            raise PipelineError(f"cannot export an MLP with {mlp.activation} / {mlp.out_activation_} activations")
        self.activation, self.softmax = mlp.activation, mlp.out_activation_ == "softmax"
        self.weights = nn.ParameterList([nn.Parameter(_f32(w), requires_grad=False) for w in mlp.coefs_])
        self.biases = nn.ParameterList([nn.Parameter(_f32(b), requires_grad=False) for b in mlp.intercepts_])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = x @ w + b
            if i < last:
                x = self.ACTIVATIONS[self.activation](x)
        return torch.softmax(x, dim=1) if self.softmax else _two_columns(torch.sigmoid(x))


def _scaler(step) -> nn.Module:
    from sklearn.preprocessing import StandardScaler

    if not isinstance(step, StandardScaler):
        raise PipelineError(f"cannot export a head with a {type(step).__name__} step: only {', '.join(EXPORTABLE)} "
                            "heads export")
    dim = step.n_features_in_
    mean = step.mean_ if step.with_mean else np.zeros(dim)
    scale = step.scale_ if step.with_std else np.ones(dim)
    return _Scale(mean, scale)


def _classifier(step) -> nn.Module:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.neural_network import MLPClassifier

    if isinstance(step, (LogisticRegression, LogisticRegressionCV)):
        return _Logistic(step.coef_, step.intercept_)
    if isinstance(step, CalibratedClassifierCV):
        return _SigmoidCalibrated(step)
    if isinstance(step, MLPClassifier):
        return _MLP(step)
    raise PipelineError(f"cannot export a {type(step).__name__} head: only {', '.join(EXPORTABLE)} heads export")
