"""Importing semnb must stay cheap: open_clip (seconds to import) loads only with a CLIP model."""
import subprocess
import sys


def test_fewshot_import_leaves_open_clip_unloaded():
    code = "import semnb.fewshot, sys; assert 'open_clip' not in sys.modules, 'open_clip imported eagerly'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_tiny_random_name_loads_in_a_fresh_process():
    # "semnb-tiny:random" must not depend on an earlier call having registered the tiny config
    code = ("from semnb.models import load_backbone; b = load_backbone('semnb-tiny:random', image_size=32); "
            "assert b.weights.startswith('random-init (semnb-tiny'), b.weights")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
