"""semnb: few-shot inspection of electron-microscope images, taught in notebooks."""
__version__ = "0.1.0"
