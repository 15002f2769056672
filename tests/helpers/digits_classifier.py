"""A trained ``Classifier`` (see torch_exports.py) for the digits data set, in PyTorch's weight
layout, trained here with NumPy so accuracy tests need no PyTorch.

Flatten -> Linear(64, 64) -> BatchNorm1d -> LeakyReLU(0.1) -> Dropout -> Linear(64, 64) -> ReLU6
-> Linear(64, 10, bias=False) -> LogSoftmax. Training runs without the BatchNorm (full-batch
Adam on the cross-entropy); afterwards the BatchNorm gets non-trivial running statistics and the
first Linear is rescaled so the network computes the same function, which is what the exported
graph's BatchNormalization node must then reproduce when folded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from helpers.torch_exports import BatchNorm, Linear

FloatArray = npt.NDArray[np.float32]


@dataclass
class TrainedClassifier:
    l1: Linear
    bn: BatchNorm
    l2: Linear
    l3: Linear
    x_test: FloatArray  # [rows, 8, 8] images scaled to [0, 1]
    y_test: npt.NDArray[np.int64]


def train_digits_classifier(seed: int = 0, epochs: int = 400) -> TrainedClassifier:
    from threadpoolctl import threadpool_limits

    # Small matrices: a multi-threaded BLAS only spins, badly so on a busy machine.
    with threadpool_limits(1):
        return _train(seed, epochs)


def _train(seed: int, epochs: int) -> TrainedClassifier:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.3, random_state=seed, stratify=data.target
    )
    rng = np.random.default_rng(seed)
    sizes = [(64, 64), (64, 64), (64, 10)]
    params = [rng.normal(0, np.sqrt(2 / a), (a, b)) for a, b in sizes]
    biases = [np.zeros(b) for _, b in sizes[:2]]
    tensors = [*params, *biases]
    moments = [np.zeros_like(t) for t in tensors]
    squares = [np.zeros_like(t) for t in tensors]
    onehot = np.eye(10)[y_train]
    for step in range(1, epochs + 1):
        w1, w2, w3, b1, b2 = tensors
        z1 = x_train @ w1 + b1
        h1 = np.where(z1 > 0, z1, 0.1 * z1)
        z2 = h1 @ w2 + b2
        h2 = np.clip(z2, 0, 6)
        logits = h2 @ w3
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        d_logits = (p - onehot) / len(x_train)
        d_w3 = h2.T @ d_logits
        d_z2 = (d_logits @ w3.T) * ((z2 > 0) & (z2 < 6))
        d_w2, d_b2 = h1.T @ d_z2, d_z2.sum(axis=0)
        d_z1 = (d_z2 @ w2.T) * np.where(z1 > 0, 1.0, 0.1)
        d_w1, d_b1 = x_train.T @ d_z1, d_z1.sum(axis=0)
        for i, grad in enumerate([d_w1, d_w2, d_w3, d_b1, d_b2]):
            moments[i] = 0.9 * moments[i] + 0.1 * grad
            squares[i] = 0.999 * squares[i] + 0.001 * grad**2
            corrected = moments[i] / (1 - 0.9**step)
            tensors[i] -= 0.01 * corrected / (np.sqrt(squares[i] / (1 - 0.999**step)) + 1e-8)
    w1, w2, w3, b1, b2 = tensors
    # A BatchNorm with real statistics, and the first Linear adjusted so BN(l1(x)) == x w1 + b1.
    bn = BatchNorm(
        rng.uniform(0.5, 1.5, 64).astype(np.float32),
        rng.normal(0, 0.1, 64).astype(np.float32),
        rng.normal(0, 0.5, 64).astype(np.float32),
        rng.uniform(0.5, 2.0, 64).astype(np.float32),
    )
    factor = bn.weight.astype(np.float64) / np.sqrt(bn.running_var.astype(np.float64) + 1e-5)
    l1 = Linear(
        (w1 / factor).T.astype(np.float32),
        ((b1 - bn.bias) / factor + bn.running_mean).astype(np.float32),
    )
    return TrainedClassifier(
        l1,
        bn,
        Linear(w2.T.astype(np.float32), b2.astype(np.float32)),
        Linear(w3.T.astype(np.float32), None),
        x_test.reshape(-1, 8, 8),
        y_test.astype(np.int64),
    )
