"""Reports: what a run learned (report.html / report.md), the runs table, model summaries, predict, export.

Modules: build (the report's sections), document (HTML and Markdown writers), plots (reusable
matplotlib figures), runs (finding and reading run directories), summary (layer table, weight
statistics), predict, export, hooks (WriteReport, the end-of-run hook that writes the report), live
(TensorBoard callback). Import what you need from them; this package itself imports nothing heavy,
so the CLI starts fast.
"""
