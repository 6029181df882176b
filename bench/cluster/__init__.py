"""Scale-out on Dask: one sweep spread over every GPU of a host (LocalCUDACluster) or of a cluster (any scheduler).

- `target`: the `--cluster` value (local, local:N, tcp://host:port), parsed and checked; no Dask import.
- `gpus`: what GPU a Dask worker owns (CUDA_VISIBLE_DEVICES, NVML name/UUID/memory).
- `child`: the fresh process that runs one variant (bench.worker.run_job) on the worker's GPU.
- `task`: the Dask task: device lock, starts `child`, relays its messages to the coordinator's queue, obeys cancel.
- `coordinator`: the `bench sweep` side: cluster connection, scheduling, the single DuckDB writer, faults.
Dask is imported only by `task` and `coordinator`, and only when a sweep asks for a cluster.
"""
