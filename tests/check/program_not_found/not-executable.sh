#!/bin/sh
echo "no exec bit: drover check warns"
