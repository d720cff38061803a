"""The experiment's records: its Parquet files and what is read from them."""
