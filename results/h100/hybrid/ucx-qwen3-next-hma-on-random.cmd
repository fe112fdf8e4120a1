# kvxfer-send -t ucx --ucx-op put -m qwen3-next-80b-a3b --hma on --block-table random:1 -p 32768 -g block -n 20 -w 2
