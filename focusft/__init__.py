"""focusft: FocuSFT (bilevel, dilution-aware long-context SFT) for Hugging Face decoders.

    from focusft import FocusTrainer, FocusConfig

(loaded on first use, so ``import focusft.<module>`` and the CLI stay light).
"""

__version__ = "0.1.0"
__all__ = ["FocusConfig", "FocusTrainer"]


def __getattr__(name):
    if name == "FocusTrainer":
        from focusft.training.trainer import FocusTrainer

        return FocusTrainer
    if name == "FocusConfig":
        from focusft.training.config import FocusConfig

        return FocusConfig
    raise AttributeError(f"module 'focusft' has no attribute {name!r}")
