# kvxfer-send -t tcp -m gpt-oss-120b -p 8192,32768 -g layer,block -n 10 -w 2
