"""Writes tests/eval/logreg.json: a fixed multinomial problem and scikit-learn's
LogisticRegression fitted on it (lbfgs, C = 0.5, run to convergence), for genie's probe to match.

By hand, never in CI:
    python3 -m venv /tmp/skl && /tmp/skl/bin/pip install scikit-learn numpy
    /tmp/skl/bin/python tests/eval/make_logreg_fixture.py
"""
import json
import pathlib

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression

rng = np.random.default_rng(17)
classes, dim, per_class, test_per_class = 4, 12, 9, 25
centres = rng.normal(0.0, 1.0, (classes, dim))


def draw(n):
    x = np.concatenate([centres[c] + rng.normal(0.0, 1.3, (n, dim)) for c in range(classes)])
    # L2-normalised, as the few-shot probe sees backbone features.
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.repeat(np.arange(classes), n)
    return x.astype(np.float32), y


x, y = draw(per_class)
x_test, y_test = draw(test_per_class)
model = LogisticRegression(C=0.5, tol=1e-12, max_iter=100000).fit(x.astype(np.float64), y)
out = {
    "sklearn": sklearn.__version__,
    "c": 0.5,
    "classes": classes,
    "x": x.tolist(),
    "y": y.tolist(),
    "x_test": x_test.tolist(),
    "y_test": y_test.tolist(),
    "coef": model.coef_.tolist(),
    "intercept": model.intercept_.tolist(),
    "test_accuracy": 100.0 * float((model.predict(x_test.astype(np.float64)) == y_test).mean()),
    "train_accuracy": 100.0 * float((model.predict(x.astype(np.float64)) == y).mean()),
}
path = pathlib.Path(__file__).with_name("logreg.json")
path.write_text(json.dumps(out))
print(f"wrote {path}: test accuracy {out['test_accuracy']:.1f} %, sklearn {sklearn.__version__}")
