# Timing probe (wrong output): both products skipped (fp8nov + fp8nos): the memory pipeline alone.
bash /work/main/docs/experiments/s17-fp8nov.sed.sh && bash /work/main/docs/experiments/s17-fp8nos.sed.sh
