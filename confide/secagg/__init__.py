"""SecAgg+ secure aggregation: pure math and protocol logic (Bell et al., CCS 2020).

Sites call ``advertise``, ``share_keys``, ``masked_input`` and ``unmask`` in turn; the server
drives a ``ServerRound`` through ``new_round`` ... ``finish``. Nothing here touches a socket,
clock, file or database; randomness comes from ``os.urandom`` in the public functions.
"""

from confide.secagg.client import (
    AdvertisedKeys,
    ClientStage,
    ClientState,
    NeighbourKeys,
    UnmaskReply,
    advertise,
    masked_input,
    share_keys,
    unmask,
)
from confide.secagg.graph import Graph, choose_degree, harary_graph
from confide.secagg.params import SecAggParams, choose_params, job_params
from confide.secagg.prg import DEFAULT_CIPHER, PrgCipher, accumulate, expand
from confide.secagg.quantize import Quantized, dequantize, quantize
from confide.secagg.server import (
    RoundAborted,
    ServerRound,
    ServerStage,
    ShareKeysRequest,
    UnmaskRequest,
    add_advertised,
    add_masked_input,
    add_shares,
    check_unmask_reply,
    close_advertise,
    close_masked_input,
    close_share_keys,
    finish,
    masked_input_request,
    new_round,
    share_keys_request,
    unmask_request,
)

__all__ = [
    "DEFAULT_CIPHER",
    "AdvertisedKeys",
    "ClientStage",
    "ClientState",
    "Graph",
    "NeighbourKeys",
    "PrgCipher",
    "Quantized",
    "RoundAborted",
    "SecAggParams",
    "ServerRound",
    "ServerStage",
    "ShareKeysRequest",
    "UnmaskReply",
    "UnmaskRequest",
    "accumulate",
    "add_advertised",
    "add_masked_input",
    "add_shares",
    "advertise",
    "check_unmask_reply",
    "choose_degree",
    "choose_params",
    "close_advertise",
    "close_masked_input",
    "close_share_keys",
    "dequantize",
    "expand",
    "finish",
    "harary_graph",
    "job_params",
    "masked_input",
    "masked_input_request",
    "new_round",
    "quantize",
    "share_keys",
    "share_keys_request",
    "unmask",
    "unmask_request",
]
