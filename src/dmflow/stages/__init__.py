"""One module per ``rules/*.smk`` file: the only code that reads and writes stage files.

Each public function of a module is one rule (same name; the CLI command is the name
with dashes): it reads its inputs, calls the computation layers and writes its
outputs atomically through ``dmflow.core.io``.
"""
