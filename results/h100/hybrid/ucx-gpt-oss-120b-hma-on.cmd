# kvxfer-send -t ucx --ucx-op put -m gpt-oss-120b --hma on -p 8192,32768 -g layer,block -n 20 -w 2
