"""The Run tab: the job queue's choices and rows, and Try this quant."""
