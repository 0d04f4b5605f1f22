"""Classifier heads: each is a plain scikit-learn estimator, with its hyperparameters chosen on train data only.

Selection uses stratified k-fold CV on the train split, or the dev split when the data has one (a PredefinedSplit,
then a refit on train + dev). The test split never reaches this module.
"""

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import BaseCrossValidator, GridSearchCV, PredefinedSplit, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC

from pipeline.errors import PipelineError
from pipeline.registry import parse_names
from pipeline.workers import process_pool

LARGE_TRAIN = 5_000  # exact kernel SVMs cost O(n^2): ~25 s per fit at 10k rows on 2 cores


@dataclass(frozen=True)
class Selection:
    """What a head's builder needs to make an estimator that selects its own hyperparameters on train data only."""

    seed: int
    n_train: int
    cv: BaseCrossValidator
    smallest_class: int  # rows of the rarest class in the smallest training part of `cv`


@dataclass(frozen=True)
class Head:
    """A registry entry. `build` returns one ready estimator: fitting it selects its hyperparameters (by `cv`)."""

    name: str
    description: str
    build: Callable[[Selection], BaseEstimator]
    folds: int = 3
    calibrated: bool = False  # calibration runs its own CV: each class needs 2+ rows in every training part
    onnx: bool = True  # its run keeps an ONNX graph (head_graph.py): predict runs it, `export` takes the run


def _search(estimator: BaseEstimator, grid: dict, sel: Selection) -> GridSearchCV:
    return GridSearchCV(estimator, grid, cv=sel.cv, scoring="accuracy", n_jobs=-1, refit=True)


def _calibration(sel: Selection) -> int:
    """Calibration folds: 3, or fewer when a class is rarer than that (down to the minimum of 2)."""
    return max(2, min(3, sel.smallest_class))


def _logreg(sel: Selection) -> BaseEstimator:
    """LogisticRegressionCV walks the C path with warm starts: 3x faster than a grid search, same choice."""
    search = LogisticRegressionCV(Cs=[0.001, 0.01, 0.1, 1.0], cv=sel.cv, scoring="accuracy", max_iter=2000,
                                  n_jobs=-1, random_state=sel.seed, **_LOGREG_FUTURE)
    return make_pipeline(StandardScaler(), search)


# scikit-learn 1.8+ warns on every fit unless these are set; older releases do not know them. The values are the
# L2 penalty and attributes used all along, so results are the same on every release.
_LOGREG_FUTURE = {k: v for k, v in {"l1_ratios": (0.0,), "use_legacy_attributes": False}.items()
                  if k in inspect.signature(LogisticRegressionCV).parameters}


def _linear_svm(sel: Selection) -> BaseEstimator:
    svm = LinearSVC(random_state=sel.seed, max_iter=5000)
    model = make_pipeline(StandardScaler(), CalibratedClassifierCV(svm, cv=_calibration(sel)))
    return _search(model, {"calibratedclassifiercv__estimator__C": [0.001, 0.01, 0.1]}, sel)


def _rbf_svm(sel: Selection) -> BaseEstimator:
    if sel.n_train > LARGE_TRAIN:
        approx = Nystroem(n_components=1000, random_state=sel.seed)
        svm = CalibratedClassifierCV(LinearSVC(random_state=sel.seed), cv=_calibration(sel))
        return _search(make_pipeline(StandardScaler(), approx, svm),
                       {"nystroem__gamma": [None], "calibratedclassifiercv__estimator__C": [0.01, 0.1]}, sel)
    svm = CalibratedClassifierCV(SVC(kernel="rbf", random_state=sel.seed), cv=_calibration(sel), ensemble=False)
    return _search(make_pipeline(StandardScaler(), svm), {"calibratedclassifiercv__estimator__C": [1.0, 10.0]}, sel)


def _mlp(sel: Selection) -> BaseEstimator:
    """No search: early stopping on 10% of train is its selection."""
    mlp = MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-3, early_stopping=True, validation_fraction=0.1,
                        n_iter_no_change=8, max_iter=200, random_state=sel.seed)
    return make_pipeline(StandardScaler(), mlp)


def _knn(sel: Selection) -> BaseEstimator:
    """k up to the rows of a training part (at least half of train): a larger k fails on every fold."""
    ks = [k for k in (5, 15, 45) if k <= sel.n_train // 2] or [1]
    model = make_pipeline(Normalizer(), KNeighborsClassifier(weights="distance"))
    return _search(model, {"kneighborsclassifier__n_neighbors": ks}, sel)


HEADS: dict[str, Head] = {h.name: h for h in [
    Head("logreg", "standardised features + logistic regression, C by CV", _logreg, folds=5),
    Head("linear-svm", "standardised features + linear SVM (calibrated probabilities), C by CV", _linear_svm,
         calibrated=True),
    Head("rbf-svm", "RBF-kernel SVM, C by CV (Nystroem + linear SVM above 5k rows)", _rbf_svm, calibrated=True),
    Head("mlp", "one hidden layer of 256, early stopping on 10% of train", _mlp),
    Head("knn", "cosine k-nearest neighbours, k by CV", _knn, onnx=False),
]}


def onnx_heads() -> list[str]:
    """The heads whose runs export to one ONNX graph."""
    return [name for name, head in HEADS.items() if head.onnx]


def parse_heads(spec: str) -> list[str]:
    """'logreg,mlp' or 'all' -> validated head names; unknown names are refused with the known list."""
    return parse_names(spec, HEADS, "head")


def fit_head(name: str, X_train: np.ndarray, y_train: np.ndarray, X_dev: np.ndarray | None = None,
             y_dev: np.ndarray | None = None, seed: int = 0) -> BaseEstimator:
    """Fit head `name`, choosing its hyperparameters on dev (if given) or by stratified CV on train."""
    head = HEADS[name]
    if (X_dev is None or not len(X_dev)) and np.bincount(y_train)[np.unique(y_train)].min() < 2:
        return _without_selection(name, X_train, y_train, seed)
    X, y, sel = _selection(X_train, y_train, X_dev, y_dev, seed, head.folds)
    if head.calibrated and sel.smallest_class < 2:
        raise HeadUnavailable(f"head {name} calibrates its probabilities by CV and needs at least 2 rows of every "
                              f"class in each training part ({sel.smallest_class} here): use logreg, mlp or knn, "
                              "or add rows of the rarest class")
    with process_pool(), warnings.catch_warnings():
        # Expected on some folds and judged by the scores: convergence within max_iter, and a class rarer than
        # the folds. Every other warning is shown.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="The least populated class in y has only")
        return head.build(sel).fit(X, y)


def _without_selection(name: str, X: np.ndarray, y: np.ndarray, seed: int) -> BaseEstimator:
    """A class with one train row (e.g. one shot per class) leaves nothing to cross-validate on: logreg is fitted
    with C=1 (SetFit's head does the same), the other heads are refused with the way out."""
    if name != "logreg":
        raise HeadUnavailable(f"head {name} chooses its settings by CV on train, which needs at least 2 train rows "
                              "of every class (1 here): use logreg, add rows of the rarest class, or give a dev split")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))
    return model.fit(X, y)


class HeadUnavailable(PipelineError):
    """This head cannot be fitted on this data (e.g. too few rows of a class); other heads may still run."""


def _selection(X_train, y_train, X_dev, y_dev, seed: int, folds: int) -> tuple[np.ndarray, np.ndarray, Selection]:
    """The rows a head fits on and how it selects: dev as a predefined split (then a refit on train + dev), or
    stratified k-fold on train with k capped by the rarest class."""
    counts = np.bincount(y_train)
    smallest = int(counts[counts > 0].min())
    if X_dev is not None and len(X_dev):
        fold = np.r_[np.full(len(y_train), -1), np.zeros(len(y_dev), dtype=int)]
        return (np.vstack([X_train, X_dev]), np.r_[y_train, y_dev],
                Selection(seed, len(y_train), PredefinedSplit(fold), smallest))
    k = max(2, min(folds, smallest))
    cv = StratifiedKFold(k, shuffle=True, random_state=seed)
    return X_train, y_train, Selection(seed, len(y_train), cv, smallest - int(np.ceil(smallest / k)))


def head_params(model: BaseEstimator) -> dict:
    """The chosen hyperparameters (for the report), whatever wrapper the head came in."""
    if isinstance(model, GridSearchCV):
        return {k.split("__")[-1]: v for k, v in model.best_params_.items()}
    last = model[-1] if hasattr(model, "steps") else model
    return {"C": float(np.ravel(last.C_)[0])} if hasattr(last, "C_") else {}
