import sys

if __name__ == "__main__":
    # `python -m ops health`: the container health check; `python -m ops`: the eventlistener
    if sys.argv[1:] == ["health"]:
        from ops.health import main
    elif len(sys.argv) > 1:
        print("usage: python -m ops [health]", file=sys.stderr)
        raise SystemExit(2)
    else:
        from ops.listener import main
    raise SystemExit(main())
