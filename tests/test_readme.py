"""The README's Python tour runs as written (so the front page cannot drift from the code)."""

import os
import re


def test_readme_python_tour_runs():
    path = os.path.join(os.path.dirname(__file__), "..", "README.md")
    with open(path) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert blocks, "the README lost its Python tour"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
