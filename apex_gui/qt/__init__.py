"""Qt glue that is not a view: the job queue, workers, screenshots."""
