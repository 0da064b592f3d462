"""Inspector: industrial defect classification with a multi-scale VGG.

The core library: model, image decoding, training, evaluation and the model store.
It imports no web framework and no task queue.
"""

__version__ = "0.1.0"
