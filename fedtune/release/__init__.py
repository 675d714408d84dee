"""After a federation: turn its results folder into files other people use and can check.

``run_files``  - read and check a finished results folder (config, metrics, the adapter)
``model_card`` - the Hugging Face model card, from the run's files only (pure)
``manifest``   - SHA-256 of every exported file, and its check
``export``     - ``fedtune export``: adapter, optional merged model, cards, manifest
"""
