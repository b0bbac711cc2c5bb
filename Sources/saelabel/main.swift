print("saelabel")
