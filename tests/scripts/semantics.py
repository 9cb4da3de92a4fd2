"""Prints what a script sees of its own launch, to compare `python` with `torchdoctor run`."""

import json
import sys

print(json.dumps({
    "name": __name__,
    "argv": sys.argv,
    "path0": sys.path[0],
    "file": __file__,
    "main_file": sys.modules["__main__"].__file__,
    "has_torchdoctor_on_path": any("torchdoctor" in p for p in sys.path[:1]),
    "torch_imported": "torch" in sys.modules,  # torchdoctor must not import torch for a script that does not
}))
sys.stdout.flush()
print("to stderr", file=sys.stderr)
if "--exit" in sys.argv:
    sys.exit(int(sys.argv[sys.argv.index("--exit") + 1]))
if "--raise" in sys.argv:
    raise RuntimeError("the script failed on purpose")
