"""A linear probe: L2 logistic regression on a frozen embedding (``annotate(method="logreg")``, PanFoMaBench)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LinearProbe"]

#: standardized features are clipped to this many standard deviations (as CellTypist does with genes)
CLIP = 10.0


@dataclass
class LinearProbe:
    """Each dimension standardized on the training cells and clipped at ±10, then a logistic regression."""

    scaler: Any
    classifier: Any

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, *, inverse_regularization: float = 1.0) -> LinearProbe:
        """Fit on ``(n_cells, n_features)`` ``features`` and their ``labels`` (deterministic: lbfgs)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(features)
        classifier = LogisticRegression(max_iter=1000, C=inverse_regularization)
        classifier.fit(np.clip(scaler.transform(features), -CLIP, CLIP), labels)
        return cls(scaler=scaler, classifier=classifier)

    @property
    def classes(self) -> np.ndarray:
        """The labels seen in training, in the order of :meth:`probabilities`' columns."""
        return self.classifier.classes_

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """``(n_cells, n_classes)`` class probabilities of new cells."""
        return self.classifier.predict_proba(self._standardized(features))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The most probable label of each new cell."""
        return self.classifier.predict(self._standardized(features))

    def _standardized(self, features: np.ndarray) -> np.ndarray:
        return np.clip(self.scaler.transform(features), -CLIP, CLIP)
