# kvxfer-send -t tcp -m llama-3.1-8b -p 1024 -g layer -w 2 --decode-hold 50 --prefill-tflops 809 --overlap layer --arrivals poisson:5,10,20,40 -n 60
