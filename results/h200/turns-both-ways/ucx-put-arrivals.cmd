# kvxfer-send -t ucx --ucx-op put --ucx-err-mode none -m llama-3.1-8b --turns 10 --turn-tokens 1000:100 -n 8 -w 1 -g block --multi-turn delta,bidirectional --arrivals poisson:100,400
