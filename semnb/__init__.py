"""semnb: few-shot inspection of electron-microscope images, taught in notebooks.

Start with `semnb.print_env()` and notebook 00_quickstart.
"""
from semnb.env import print_env

__version__ = "0.1.0"
__all__ = ["print_env", "__version__"]
