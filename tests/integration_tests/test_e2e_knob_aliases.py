"""A deprecated knob name (the autolrs tuner's min_lr) reaches a real server: the hello reply
carries the note and the callback shows it as a DeprecationWarning at the user's line."""

from __future__ import annotations

import warnings

import torch

from autolrs.callbacks import AutoLRS, AutoLRSDeprecationWarning


def test_the_hello_reply_carries_the_note_and_the_callback_warns(live_server, tmp_path):
    server = live_server(tmp_path / "state")
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for config, expected in (({"min_lr": 0.01, "tau": 40}, ["'min_lr' is deprecated; use 'lr_min'"]),
                             ({"lr_min": 0.01, "tau": 40}, [])):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            AutoLRS(model, optimizer, tuner="autolrs", config=config, server=server.endpoint, timeout=10.0).close()
        notes = [str(w.message) for w in caught if issubclass(w.category, AutoLRSDeprecationWarning)]
        assert len(notes) == len(expected) and all(e in n for e, n in zip(expected, notes))
        assert all(w.filename == __file__ for w in caught if issubclass(w.category, AutoLRSDeprecationWarning))
