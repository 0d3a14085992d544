"""semnb: few-shot inspection of electron-microscope images, taught in notebooks.

Start with `semnb.print_env()` and notebook 00_quickstart. `semnb.evaluate(task, images, **options)`
runs one task's method against its baselines (docs/ARCHITECTURE.md maps the package).
"""
from semnb.env import print_env
from semnb.tasks import evaluate

__version__ = "0.1.0"
__all__ = ["evaluate", "print_env", "__version__"]
