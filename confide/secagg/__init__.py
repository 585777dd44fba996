"""SecAgg+ secure aggregation: pure math and protocol logic (Bell et al., CCS 2020).

Sites call ``advertise``, ``share_keys``, ``check_shares``, ``masked_input``, ``consistency``
and ``unmask`` in turn; the server drives a ``ServerRound`` through ``new_round`` ...
``finish``. ``RoundRules.params(n)`` fixes k, t and the quorum for both sides; the session
id and the signed view (``confide.secagg.view``) bind a round together. Nothing here touches
a socket, clock, file or database; randomness comes from ``os.urandom`` in the public
functions.
"""

from confide.secagg.client import (
    AdvertisedKeys,
    Attestation,
    ClientStage,
    ClientState,
    NeighbourKeys,
    UnmaskReply,
    advertise,
    check_shares,
    consistency,
    masked_input,
    share_keys,
    unmask,
)
from confide.secagg.graph import Graph, choose_degree, harary_graph
from confide.secagg.params import (
    MIN_SECURE_SITES,
    RoundRules,
    SecAggParams,
    choose_params,
    job_params,
    job_rules,
)
from confide.secagg.prg import DEFAULT_CIPHER, PrgCipher, accumulate, expand
from confide.secagg.quantize import Quantized, dequantize, quantize
from confide.secagg.server import (
    RoundAborted,
    ServerRound,
    ServerStage,
    add_advertised,
    add_consistency,
    add_masked_input,
    add_share_check,
    add_shares,
    check_shares_request,
    check_unmask_reply,
    close_advertise,
    close_check_shares,
    close_consistency,
    close_masked_input,
    close_share_keys,
    finish,
    new_round,
    partners,
)
from confide.secagg.view import keys_digest, pair, session_id, view_digest

__all__ = [
    "DEFAULT_CIPHER",
    "MIN_SECURE_SITES",
    "AdvertisedKeys",
    "Attestation",
    "ClientStage",
    "ClientState",
    "Graph",
    "NeighbourKeys",
    "PrgCipher",
    "Quantized",
    "RoundAborted",
    "RoundRules",
    "SecAggParams",
    "ServerRound",
    "ServerStage",
    "UnmaskReply",
    "accumulate",
    "add_advertised",
    "add_consistency",
    "add_masked_input",
    "add_share_check",
    "add_shares",
    "advertise",
    "check_shares",
    "check_shares_request",
    "check_unmask_reply",
    "choose_degree",
    "choose_params",
    "close_advertise",
    "close_check_shares",
    "close_consistency",
    "close_masked_input",
    "close_share_keys",
    "consistency",
    "dequantize",
    "expand",
    "finish",
    "harary_graph",
    "job_params",
    "job_rules",
    "keys_digest",
    "masked_input",
    "new_round",
    "pair",
    "partners",
    "quantize",
    "session_id",
    "share_keys",
    "unmask",
    "view_digest",
]
