"""The pipeline: what turns an experiment into run directories. One module per job:

- :mod:`.session`: seeding, the base model (loaded or trained), the validated :class:`~.session.Session`;
- :mod:`.run`: one search end to end (search, long-term fine-tune, test, ``summary.json``);
- :mod:`.rundir`: the run directory's lifecycle (default name, resume checks, clean-up on failure);
- :mod:`.artifacts`: the files a run leaves (``pruned_model.pt`` format, ``summary.json``);
- :mod:`.pool`: evaluating plans on Ray actors;
- :mod:`.experiments`: many runs as Ray Tune trials (``autoprune run``);
- :mod:`.export`: torch.export / ONNX export, BatchNorm folding;
- :mod:`.sensitivity`, :mod:`.lut`: the sensitivity analysis and LUT files behind their commands;
- :mod:`.report`: comparing finished runs.

Imports everything below it (search, agents through the searcher registry); only the CLI imports it.
"""
