"""focusft: FocuSFT (bilevel, dilution-aware long-context SFT) for Hugging Face decoders."""

__version__ = "0.1.0"
