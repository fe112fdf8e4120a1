# kvxfer-send -t ucx --ucx-op put -m qwen3-next-80b-a3b --hma off -p 8192,32768 -g layer,block -n 20 -w 2
