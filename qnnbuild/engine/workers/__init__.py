"""Where stages run: a process per stage, the Dask client, the task on a worker, shards over Dask."""
