"""The pieces of tools/build_workflows.py: the graph writer (graph.py), the download hints and sizes of the
models the workflows load (downloads.py), and one module per workflow family: Kiwi-Edit release edits
(kiwi_edit.py), judging and reference synthesis (judging.py), the toy world (toy.py) and the methods trained
here (methods.py)."""
