"""Run a notebook's Colab install cell as Colab would, in this Python, with its form field set to SPEC.

Usage: python .ci/colab_cell.py NOTEBOOK SPEC. A stand-in `google.colab` module makes the cell take its
Colab branch; SPEC replaces the `MBT_PIP_SPEC` field's value, as a user of a fork does in Colab's form.
"""
import json
import re
import sys
import types
from pathlib import Path

notebook, spec = sys.argv[1], sys.argv[2]
cell = next(c for c in json.loads(Path(notebook).read_text())["cells"] if c["cell_type"] == "code")
source, count = re.subn(r'^MBT_PIP_SPEC = ".*?"(?=\s+#@param)', f"MBT_PIP_SPEC = {spec!r}", "".join(cell["source"]),
                        flags=re.M)
if count != 1:
    sys.exit(f"{notebook}: the install cell has no `MBT_PIP_SPEC = \"...\"  #@param` form field")
for name in ("google", "google.colab", "google.colab.output"):  # jax imports google.colab.output on Colab
    sys.modules[name] = types.ModuleType(name)
sys.modules["google.colab"].output = sys.modules["google.colab.output"]
exec(compile(source, f"{notebook} (install cell)", "exec"), {"__name__": "__main__"})
