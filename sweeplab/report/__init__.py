"""Reports from sweeps in MLflow: tables, image grids, an interactive grid page, latent strips and the InvokeAI
doc's figures.

Torch-free by design: runs.py reads MLflow into pandas, reports.py and docfigures.py turn the
frame into `page.Report`s, page.py writes Markdown, CSV and HTML with PNGs beside them.
"""
