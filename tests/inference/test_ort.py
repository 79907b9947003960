"""onnxruntime as a runtime: a network's graph, and sessions that run it as torch does."""

from __future__ import annotations

import numpy as np
import torch

from pawlab.inference.ort import OrtForward, network_graph, session_for


def test_a_networks_graph_runs_as_torch_does_in_a_session_whose_threads_sleep_when_idle() -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()
    session = session_for(network_graph(net, (8, 8), 3).SerializeToString())
    # idle threads spinning would take the cores the decoding workers run on
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    x = torch.randn(11, 3, 8, 8)  # not a multiple of the session's batch
    with torch.inference_mode():
        expected = net(x).numpy()
    np.testing.assert_allclose(OrtForward(session, batch_size=4)(x).numpy(), expected, rtol=1e-5, atol=1e-5)
