# kvxfer-send -t ucx --ucx-op put --ucx-err-mode none -m llama-3.1-8b -p 8192 -g layer -w 5 --concurrency 1 --arrivals poisson:250,550 -n 5000 --verify off
