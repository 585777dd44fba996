"""A throw-away federation on this machine: used by ``confide demo``, e2e tests, benchmarks.

It builds a real one (a CA, certificates issued through the CSR flow, one aggregator and N
agents as separate OS processes on 127.0.0.1 over mutual TLS), so what it shows is what
sites get.
"""

from confide_dev.localfed.data import DatasetFiles, partition_breast_cancer
from confide_dev.localfed.federation import LocalFederation, SiteSetup, partition_site

__all__ = [
    "DatasetFiles",
    "LocalFederation",
    "SiteSetup",
    "partition_breast_cancer",
    "partition_site",
]
