from cnnc.cli import main

if __name__ == "__main__":  # Dask's worker processes re-import this module when spawned
    raise SystemExit(main())
