module memspan

go 1.24
