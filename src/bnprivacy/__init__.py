"""bnprivacy: does Batch Normalization amplify memorization and membership-inference risk?

The shared package behind the executable book: configs, datasets, models, training, the results
store and the book pipeline. Chapters import from here and keep only the story and the plots.
"""

from .config import Config

__all__ = ["Config"]
__version__ = "0.1.0"
